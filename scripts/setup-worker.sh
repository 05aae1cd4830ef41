#!/usr/bin/env bash
# Onboard a GPU host as a Cumulus worker, in one command (as root on the host):
#
#   scripts/setup-worker.sh --join SWMTKN-... MANAGER_IP:2377 --image cumulus-job.tar
#
# 1. installs Docker (Debian/Ubuntu's docker.io) when it is missing;
# 2. loads the job image (there is no registry: `docker save cumulus-job:latest > cumulus-job.tar`
#    on the manager, copy the file here);
# 3. detects the host's GPUs by running the job image's own discovery (`chronos devices --json`,
#    OpenCL + NVML) with the host's GPUs passed in;
# 4. labels this engine with them (`cumulus.devices` in /etc/docker/daemon.json; the gateway's
#    swarm runtime reads it) and makes NVIDIA's container runtime the default where it exists;
# 5. joins the Swarm.
#
# Options:
#   --join TOKEN ADDR      the worker join token and manager address (docker swarm join-token worker)
#   --image FILE           a `docker save` archive of the job image to load
#   --image-tag TAG        the job image's tag (default cumulus-job:latest)
#   --advertise-addr ADDR  this host's address as the manager should reach it
#   --detect               only print the detected devices (JSON) and change nothing
#   --config-only          detect and label the engine's configuration; no restart, no join
#   --dry-run              print what would be done, change nothing
set -euo pipefail

TAG=cumulus-job:latest
TOKEN="" MANAGER="" IMAGE_FILE="" ADVERTISE="" DETECT=0 DRY=0 CONFIG_ONLY=0
CONFIG=${CUMULUS_DOCKER_CONFIG:-/etc/docker/daemon.json}

die() { echo "setup-worker: $*" >&2; exit 2; }
say() { echo "setup-worker: $*" >&2; }
run() { if [ "$DRY" = 1 ]; then echo "+ $*"; else "$@"; fi; }

while [ $# -gt 0 ]; do
  case "$1" in
    --join) [ $# -ge 3 ] || die "--join needs TOKEN and MANAGER_ADDR"; TOKEN=$2 MANAGER=$3; shift 3 ;;
    --image) [ $# -ge 2 ] || die "--image needs a file"; IMAGE_FILE=$2; shift 2 ;;
    --image-tag) [ $# -ge 2 ] || die "--image-tag needs a tag"; TAG=$2; shift 2 ;;
    --advertise-addr) [ $# -ge 2 ] || die "--advertise-addr needs an address"; ADVERTISE=$2; shift 2 ;;
    --detect) DETECT=1; shift ;;
    --config-only) CONFIG_ONLY=1; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
done
if [ "$DETECT" = 0 ] && [ "$CONFIG_ONLY" = 0 ]; then
  [ -n "$TOKEN" ] || die "--join TOKEN MANAGER_ADDR is required (or --detect)"
  [[ "$TOKEN" == SWMTKN-* ]] || die "that is not a Swarm join token (they start with SWMTKN-)"
  [[ "$MANAGER" == *:* ]] || die "the manager address must be HOST:PORT (e.g. 10.0.0.1:2377)"
  [ -z "$IMAGE_FILE" ] || [ -r "$IMAGE_FILE" ] || die "cannot read the image archive $IMAGE_FILE"
  [ "$DRY" = 1 ] || [ "$(id -u)" = 0 ] || die "run as root (it installs and configures Docker)"
fi

# 1. Docker
if ! command -v docker >/dev/null 2>&1; then
  [ "$DETECT" = 0 ] || die "docker is not installed"
  say "installing Docker (docker.io)"
  run apt-get update -qq
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io
fi

# 2. the job image
if [ -n "$IMAGE_FILE" ]; then
  say "loading the job image from $IMAGE_FILE"
  run docker load --input "$IMAGE_FILE"
fi

# 3. the GPUs, as the job image's own discovery sees them with the host's devices passed in
gpu_flags=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu_flags+=(--gpus all)
fi
[ -e /dev/kfd ] && gpu_flags+=(--device /dev/kfd)
[ -e /dev/dri ] && gpu_flags+=(--device /dev/dri)
detect() {
  docker run --rm --network none --user 1000:1000 --tmpfs /work:uid=1000 \
    ${gpu_flags[@]+"${gpu_flags[@]}"} "$TAG" \
    python -c 'import json, sys
from chronos import discover
json.dump([{k: v for k, v in d.to_json().items() if k not in ("index", "id", "sources")}
           for d in discover()], sys.stdout, separators=(",", ":"))'
}
if [ "$DRY" = 1 ] && [ "$DETECT" = 0 ]; then
  echo "+ docker run --rm ${gpu_flags[*]-} $TAG (device discovery)"
  devices='[]'
else
  devices=$(detect) || die "device discovery in $TAG failed (is the image loaded? --image FILE)"
fi
if [ "$DETECT" = 1 ]; then
  echo "$devices"
  exit 0
fi
[ "$devices" != "[]" ] || [ "$DRY" = 1 ] || die "no GPU (or OpenCL device) found on this host"
say "devices: $devices"

# 4. engine labels (and NVIDIA's runtime as the default, so that Swarm tasks see their GPU)
nvidia_runtime=0
command -v nvidia-container-runtime >/dev/null 2>&1 && nvidia_runtime=1
merge_config() {
  python3 - "$CONFIG" "$devices" "$nvidia_runtime" <<'EOF'
import json, os, sys
path, devices, nvidia = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
config = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
labels = [l for l in config.get("labels", []) if not l.startswith("cumulus.devices=")]
config["labels"] = labels + ["cumulus.devices=" + devices]
if nvidia:
    config.setdefault("runtimes", {})["nvidia"] = {"path": "nvidia-container-runtime", "runtimeArgs": []}
    config["default-runtime"] = "nvidia"
os.makedirs(os.path.dirname(path), exist_ok=True)
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump(config, f, indent=2)
os.replace(tmp, path)
EOF
}
if [ "$DRY" = 1 ]; then
  echo "+ merge cumulus.devices into $CONFIG (nvidia default runtime: $nvidia_runtime)"
else
  command -v python3 >/dev/null 2>&1 || die "python3 is needed to edit $CONFIG"
  merge_config
  say "labelled the engine in $CONFIG"
  [ "$CONFIG_ONLY" = 0 ] || exit 0
  say "restarting Docker"
  systemctl restart docker 2>/dev/null || service docker restart
fi

# 5. the Swarm
join=(docker swarm join --token "$TOKEN")
[ -z "$ADVERTISE" ] || join+=(--advertise-addr "$ADVERTISE")
run "${join[@]}" "$MANAGER"
[ "$DRY" = 1 ] || say "joined the Swarm at $MANAGER; the gateway sees this host's devices after its next start"
