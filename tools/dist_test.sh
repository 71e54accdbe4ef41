#!/usr/bin/env bash
# Distributed evaluation with torchrun, on one or several nodes.
#   tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCESSES [tools/test.py options...]
# Several nodes: run it on each with NNODES, NODE_RANK, MASTER_ADDR and PORT set alike.
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
NPROC=$3
shift 3
exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" --nproc_per_node="$NPROC" \
    "$(dirname "$0")/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
