"""Names shared by every part of gpubatch: API group, labels, annotations, finalizers.

One place, so the operator that writes a label and the code that reads it can never disagree.
"""

from typing import Final

GROUP: Final = "gpubatch.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "GPUBatch"
PLURAL: Final = "gpubatches"
SINGULAR: Final = "gpubatch"
SHORT_NAME: Final = "gpub"
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

PREFIX: Final = f"{GROUP}/"

# Labels on task pods (selectable, so the operator can watch only its own pods).
LABEL_BATCH_NAME: Final = f"{PREFIX}batch"
LABEL_BATCH_UID: Final = f"{PREFIX}batch-uid"
LABEL_TASK_INDEX: Final = f"{PREFIX}task-index"
LABEL_ATTEMPT: Final = f"{PREFIX}attempt"

# Finalizer that keeps a finished task pod until its outcome is recorded in the batch status.
FINALIZER_TRACKING: Final = f"{PREFIX}task-tracking"

# Default node label that carries the GPU model (set by NVIDIA GPU feature discovery).
DEFAULT_GPU_MODEL_LABEL: Final = "nvidia.com/gpu.product"
DEFAULT_GPU_RESOURCE: Final = "nvidia.com/gpu"

# Annotations on task pods.
# Set by the operator on a running pod just before it deletes it on purpose (task deadline, batch
# stopped), so the recorded outcome says why instead of looking like a disruption.
ANNOTATION_STOP_REASON: Final = f"{PREFIX}stop-reason"
# Names the task container on every task pod, so whoever reads the pod's outcome (the operator's
# pod index, which never sees the batch spec) reads the right container's exit code and result.
ANNOTATION_TASK_CONTAINER: Final = f"{PREFIX}task-container"

# spec.managedBy: the controller that runs a batch. Unset or this value: the gpubatch operator.
# Any other value (e.g. Kueue's MultiKueue, which mirrors the batch to a worker cluster) and
# the operator leaves the batch alone: no pods, no status, no events, no finalizer.
MANAGED_BY_GPUBATCH: Final = f"{GROUP}/operator"

# Kueue's queue label: on a GPUBatch it names the LocalQueue; the operator copies it onto every
# task pod and warm pod, whose admission Kueue's plain-pod integration then gates.
LABEL_KUEUE_QUEUE: Final = "kueue.x-k8s.io/queue-name"
# Kueue's prebuilt-workload label: on a GPUBatch it names the Kueue Workload that admits the
# whole batch (MultiKueue's copy on a worker cluster carries it). Such a batch is admitted
# already: its pods are not queued again, and the operator marks the Workload Finished when
# the batch ends, which releases the quota here and lets MultiKueue finish the manager's copy.
LABEL_KUEUE_PREBUILT_WORKLOAD: Final = "kueue.x-k8s.io/prebuilt-workload-name"
# spec.managedBy value of Kueue's MultiKueue (the manager cluster mirrors such a batch).
MANAGED_BY_MULTIKUEUE: Final = "kueue.x-k8s.io/multikueue"
