"""Names shared across the pipeline, defined once: the ensemble's public tensors, the admin header, image files.

Everything that talks to a served ensemble (the renderer that declares it, the clients, the load driver, the
locustfile) imports these. The python models that run inside Triton and the Helm chart's probe scripts are copied
into places where this package is not installed, so they carry the same names as literals; tests check they agree.
"""

from __future__ import annotations

# The ensemble's input: one encoded image (PNG, JPEG, ...) per batch row, as BYTES.
IMAGE = "IMAGE"
# Its outputs, top-k per image: class ids (INT64), scores (FP32) and label strings (BYTES).
CLASS_IDS = "CLASS_IDS"
SCORES = "SCORES"
LABELS = "LABELS"
OUTPUTS = (CLASS_IDS, SCORES, LABELS)
# One more ensemble output, for Triton's classification extension (``class_count``): every class's probability (FP32,
# in class order) with the labels file attached, so a stock client asking for class_count=k gets "score:index:label"
# of the true top k. The top-k outputs above are already ranked, and class_count on them is meaningless (and on the
# BYTES one crashes Triton 2.51). Not requested by the project's own clients.
PROBABILITIES = "PROBABILITIES"
# The file of labels, one per line in class order, in every model directory whose outputs Triton may classify.
LABELS_FILE = "labels.txt"

# A request parameter marking tooling traffic (the clients' label probe): the postprocess model answers it but leaves
# it out of the prediction metrics. Its value names the tool.
TOOLING_PARAMETER = "tooling"  # (Triton reserves keys starting with "triton_")

# The header (HTTP) or metadata key (gRPC, with Triton's protocol prefix) whose value unlocks the restricted APIs.
ADMIN_HEADER = "triton-admin-key"

# File suffixes taken as images when a folder is searched: whatever Pillow decodes that a camera or a test writes.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                            ".pbm", ".pnm"})
