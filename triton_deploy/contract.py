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

# The header (HTTP) or metadata key (gRPC, with Triton's protocol prefix) whose value unlocks the restricted APIs.
ADMIN_HEADER = "triton-admin-key"

# File suffixes taken as images when a folder is searched: whatever Pillow decodes that a camera or a test writes.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                            ".pbm", ".pnm"})
