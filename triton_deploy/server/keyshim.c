/* Loaded into tritonserver with LD_PRELOAD by triton-deploy serve: puts the admin key into Triton's arguments
 * without it ever being on the command line.
 *
 * Triton 2.51 takes its restricted-API key only as an argument, and /proc/PID/cmdline (what ps shows) is readable
 * by every local user. serve passes a placeholder there and the key in the environment, which /proc shows to the
 * owner only. Before main() runs, this constructor points each argument holding the placeholder at a copy with the
 * key in its place: main() parses the key, while the memory /proc/PID/cmdline reads keeps the placeholder. The key's
 * bytes in the original environment are then overwritten and both variables removed, so neither /proc/PID/environ
 * nor the python-backend stubs Triton starts carry it.
 */
#include <stdlib.h>
#include <string.h>

#define KEY_VARIABLE "TRITON_DEPLOY_ADMIN_KEY"
#define PLACEHOLDER "@" KEY_VARIABLE "@"

__attribute__((constructor)) static void substitute_admin_key(int argc, char **argv, char **envp) {
    const char *found = getenv(KEY_VARIABLE);
    if (found == NULL) {
        return;
    }
    char *key = strdup(found);
    if (key == NULL) {
        abort(); /* never start with the placeholder as the key */
    }
    size_t placeholder = strlen(PLACEHOLDER), length = strlen(key);
    for (int i = 0; i < argc; i++) {
        char *at = strstr(argv[i], PLACEHOLDER);
        if (at == NULL) {
            continue;
        }
        size_t head = (size_t)(at - argv[i]), tail = strlen(at + placeholder);
        char *argument = malloc(head + length + tail + 1);
        if (argument == NULL) {
            abort();
        }
        memcpy(argument, argv[i], head);
        memcpy(argument + head, key, length);
        memcpy(argument + head + length, at + placeholder, tail + 1);
        argv[i] = argument;
    }
    for (char **variable = envp; *variable != NULL; variable++) {
        if (strncmp(*variable, KEY_VARIABLE "=", strlen(KEY_VARIABLE) + 1) == 0) {
            memset(*variable + strlen(KEY_VARIABLE) + 1, 'x', length);
        }
    }
    unsetenv(KEY_VARIABLE);
    unsetenv("LD_PRELOAD");
}
