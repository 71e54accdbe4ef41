#!/usr/bin/env bash
# Distributed training with torchrun (mmengine's pytorch launcher), on one or several nodes.
#   tools/dist_train.sh CONFIG NUM_PROCESSES [tools/train.py options...]
# Several nodes: run it on each with NNODES, NODE_RANK, MASTER_ADDR and PORT set alike.
# Without CUDA the processes train on the CPU over gloo.
set -euo pipefail
CONFIG=$1
NPROC=$2
shift 2
exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" --nproc_per_node="$NPROC" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "$@"
