#!/usr/bin/env bash
# A container engine for the container-marked tests (pytest -m container) and the
# compose end-to-end test; see README "Container tests" and docs/containers.md.
#
#   scripts/containers.sh run -- CMD...   set up, run CMD with the engine's variables,
#                                         clean up; exits with CMD's status
#   scripts/containers.sh up              set up and leave the API socket running
#   scripts/containers.sh env             print the variables to export (after up)
#   scripts/containers.sh down            remove test containers, stop the socket
#   scripts/containers.sh clean           remove test containers, networks and pods
#
# Order: a Docker engine that already answers (DOCKER_HOST or /var/run/docker.sock) is
# used as it is and nothing is built (the official images are pulled). Otherwise, as
# root on Debian, rootful podman is installed from Debian's packages, configured for
# these machines, the base images are built once per machine from the configured
# Debian mirror, and podman's Docker-compatible API is served on a socket of our own.
# Otherwise nothing happens: the container tests skip (and fail under CI=true).
#
# The broker on 127.0.0.1:5672 is never touched: containers have their own network
# namespace and their ports are published on other host ports.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${EMQ_CONTAINERS_STATE:-/var/lib/envelope-mq-containers}
CONF=$STATE/containers.conf
SOCK_DIR=/run/envelope-mq-containers
# "up" serves the API on one fixed socket; each "run" on its own, so that runs of
# several users of this machine never stop each other's service.
SOCK_NAME=${EMQ_CONTAINERS_SOCKET:-podman}
set_socket() {
  SOCK=$SOCK_DIR/$1.sock
  PIDFILE=$SOCK_DIR/$1.pid
  SERVICE_LOG=$SOCK_DIR/$1.log
}
set_socket "$SOCK_NAME"
# Bump a tag when its recipe below changes: the old image is then rebuilt.
DEBIAN_IMAGE=localhost/emq/debian:bookworm-2
RABBITMQ_IMAGE=localhost/emq/rabbitmq:3-2
PYTHON_IMAGE=localhost/emq/python:3.11-2
PROMETHEUS_IMAGE=localhost/emq/prometheus:2-2
# Every container, network and pod the tests create carries this label.
LABEL=envelope-mq.test

log() { printf 'containers: %s\n' "$*" >&2; }

docker_answers() {
  # A Docker engine (not our podman socket) that answers a ping.
  local sock
  if [[ -n "${DOCKER_HOST:-}" && "${DOCKER_HOST}" != unix://"$SOCK_DIR"/* ]]; then
    command -v docker >/dev/null && docker version >/dev/null 2>&1
    return
  fi
  sock=/var/run/docker.sock
  [[ -S $sock ]] && curl -fsS --max-time 3 --unix-socket "$sock" http://d/_ping >/dev/null 2>&1
}

can_install() {
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null && [[ -r /etc/apt/sources.list.d/debian.sources || -r /etc/apt/sources.list ]]
}

install_packages() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v newuidmap >/dev/null || missing+=(uidmap)
  [[ -x /usr/lib/podman/aardvark-dns ]] || missing+=(aardvark-dns)
  [[ ${#missing[@]} -eq 0 ]] && return
  log "installing ${missing[*]} from Debian's packages"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
}

write_conf() {
  # runc: crun refuses this kernel's hybrid cgroup mounts. Pinned rlimits: root lacks
  # CAP_SYS_RESOURCE here and podman's defaults exceed the hard nofile limit.
  mkdir -p "$STATE"
  local want
  want=$(printf '%s\n' '[containers]' \
    'default_ulimits = ["nofile=10000:10000", "nproc=4096:4096"]' \
    '[engine]' 'runtime = "runc"')
  [[ -f $CONF && $(cat "$CONF") == "$want" ]] || printf '%s\n' "$want" >"$CONF"
}

have_image() { podman image exists "$1"; }

mirror() {
  local uri
  uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [[ -n $uri ]] || uri=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [[ -n $uri ]] || { log "no Debian mirror configured in apt's sources"; exit 1; }
  printf '%s' "$uri"
}

build_debian() {
  have_image "$DEBIAN_IMAGE" && return
  log "building $DEBIAN_IMAGE with debootstrap from $(mirror)"
  local rootfs
  rootfs=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$rootfs'" RETURN
  debootstrap --variant=minbase bookworm "$rootfs" "$(mirror)" >/dev/null
  rm -f "$rootfs"/var/cache/apt/archives/*.deb
  rm -rf "$rootfs"/var/lib/apt/lists/*
  # The machine's apt sources and extra CAs (its egress re-signs TLS), so that apt
  # and pip inside builds reach what the host reaches.
  if compgen -G '/etc/apt/sources.list.d/*.sources' >/dev/null; then
    rm -f "$rootfs/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/*.sources "$rootfs/etc/apt/sources.list.d/"
  fi
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  fi
  # No documentation, manual pages or translations in images: nothing reads them.
  printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-exclude=/usr/share/man/*' \
    'path-exclude=/usr/share/locale/*' 'path-exclude=/usr/share/info/*' \
    >"$rootfs/etc/dpkg/dpkg.cfg.d/01-emq-lean"
  # policy-rc.d keeps packages' postinst scripts from starting services in builds.
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod +x "$rootfs/usr/sbin/policy-rc.d"
  tar -C "$rootfs" -c . | podman import -q - "$DEBIAN_IMAGE" >/dev/null
}

build_from() {
  # build_from IMAGE: builds the image from the Containerfile on stdin.
  local image=$1 dir
  have_image "$image" && return
  log "building $image"
  dir=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$dir'" RETURN
  cat >"$dir/Containerfile"
  podman build -q --layers=false -t "$image" -f "$dir/Containerfile" "$dir" >/dev/null
}

APT_INSTALL='apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends'
APT_CLEAN='rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb'

build_images() {
  build_debian
  # RabbitMQ from Debian's package, as the official image behaves: guest may log in
  # from the bridge (mapped ports arrive from the gateway), management enabled,
  # RABBITMQ_DEFAULT_USER/PASS honoured by the server itself, logs on stdout.
  build_from "$RABBITMQ_IMAGE" <<EOF
FROM $DEBIAN_IMAGE
RUN $APT_INSTALL rabbitmq-server && $APT_CLEAN \\
 && printf 'loopback_users.guest = false\nlisteners.tcp.default = 5672\nmanagement.tcp.port = 15672\n' > /etc/rabbitmq/rabbitmq.conf \\
 && printf '[rabbitmq_management].\n' > /etc/rabbitmq/enabled_plugins
ENV HOME=/var/lib/rabbitmq RABBITMQ_LOGS=- LANG=C.UTF-8
WORKDIR /var/lib/rabbitmq
USER rabbitmq
EXPOSE 5672 15672
CMD ["/usr/lib/rabbitmq/bin/rabbitmq-server"]
EOF
  # Python 3.11 from Debian's package, in a venv first on PATH: python and pip behave
  # as in the official python:3.11-slim image (which the Dockerfile defaults to).
  build_from "$PYTHON_IMAGE" <<EOF
FROM $DEBIAN_IMAGE
RUN $APT_INSTALL python3.11 python3.11-venv ca-certificates && $APT_CLEAN \\
 && update-ca-certificates >/dev/null \\
 && python3.11 -m venv /opt/python && /opt/python/bin/pip install -q --no-cache-dir -U pip
ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt LANG=C.UTF-8
CMD ["python3"]
EOF
  # Prometheus from Debian's package, for the compose file's monitoring profile.
  build_from "$PROMETHEUS_IMAGE" <<EOF
FROM $DEBIAN_IMAGE
# Minus moment-timezone's 214 MB of zone data, which only the classic web UI's
# clock uses: scraping, the API and /-/ready do not.
RUN $APT_INSTALL prometheus wget && $APT_CLEAN \\
 && rm -rf /usr/share/javascript/moment-timezone/*
USER prometheus
WORKDIR /var/lib/prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/var/lib/prometheus/data"]
EOF
}

prune_images() {
  # Images of ours that an earlier recipe built: the disk is shared.
  local image
  for image in $(podman images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/emq/' || true); do
    case " $DEBIAN_IMAGE $RABBITMQ_IMAGE $PYTHON_IMAGE $PROMETHEUS_IMAGE " in
      *" $image "*) ;;
      *) podman rmi -f "$image" >/dev/null 2>&1 || true ;;
    esac
  done
}

service_running() {
  [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && [[ -S $SOCK ]]
}

start_service() {
  service_running && return
  mkdir -p "$SOCK_DIR"
  rm -f "$SOCK"
  # A plain command (no systemd here), its own PID kept to stop exactly it.
  CONTAINERS_CONF=$CONF podman system service --time=0 "unix://$SOCK" \
    >"$SERVICE_LOG" 2>&1 &
  echo $! >"$PIDFILE"
  local i
  for i in $(seq 1 100); do
    curl -fsS --max-time 2 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1 && return
    sleep 0.1
  done
  log "podman's API socket did not answer; see $SERVICE_LOG"
  exit 1
}

stop_service() {
  [[ -f $PIDFILE ]] || return 0
  local pid
  pid=$(cat "$PIDFILE")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$PIDFILE" "$SOCK" "$SERVICE_LOG"
}

podman_env() {
  cat <<EOF
export DOCKER_HOST=unix://$SOCK
export CONTAINERS_CONF=$CONF
export TESTCONTAINERS_RYUK_DISABLED=true
export TESTCONTAINERS_CONNECTION_MODE=docker_host
export EMQ_CONTAINER_ENGINE=podman
export EMQ_RABBITMQ_IMAGE=$RABBITMQ_IMAGE
export EMQ_PYTHON_IMAGE=$PYTHON_IMAGE
export EMQ_PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE
EOF
}

docker_env() {
  # Ryuk reaps what a crashed run leaves; the official images are pulled.
  echo "export EMQ_CONTAINER_ENGINE=docker"
}

clean() {
  # Everything labelled as ours, whoever started it: for "down", not during a run
  # (another run on this machine may own some; the tests clean up only their own).
  command -v podman >/dev/null || return 0
  local ids
  ids=$(CONTAINERS_CONF=$CONF podman ps -aq --filter "label=$LABEL" 2>/dev/null || true)
  [[ -z $ids ]] || CONTAINERS_CONF=$CONF podman rm -f -t 2 $ids >/dev/null 2>&1 || true
  ids=$(CONTAINERS_CONF=$CONF podman pod ps -q --filter "label=$LABEL" 2>/dev/null || true)
  [[ -z $ids ]] || CONTAINERS_CONF=$CONF podman pod rm -f $ids >/dev/null 2>&1 || true
  ids=$(CONTAINERS_CONF=$CONF podman network ls -q --filter "label=$LABEL" 2>/dev/null || true)
  [[ -z $ids ]] || CONTAINERS_CONF=$CONF podman network rm -f $ids >/dev/null 2>&1 || true
}

reap_dead() {
  # Containers, pods and networks whose owning test process (label host:pid) has
  # exited: what a killed run left. Another live run's are left alone.
  local kind list labels id owner host pid
  for kind in container pod network; do
    case $kind in
      container) list='ps -aq' labels='.Config.Labels' ;;
      pod) list='pod ps -q' labels='.Labels' ;;
      network) list='network ls -q' labels='.Labels' ;;
    esac
    # shellcheck disable=SC2086
    for id in $(CONTAINERS_CONF=$CONF podman $list --filter "label=$LABEL" 2>/dev/null); do
      owner=$(CONTAINERS_CONF=$CONF podman "$kind" inspect \
        --format "{{index $labels \"$LABEL.owner\"}}" "$id" 2>/dev/null || true)
      host=${owner%:*} pid=${owner##*:}
      [[ $host == "$(hostname)" && $pid =~ ^[0-9]+$ ]] || continue
      kill -0 "$pid" 2>/dev/null && continue
      case $kind in
        container) CONTAINERS_CONF=$CONF podman rm -f -t 2 "$id" >/dev/null 2>&1 || true ;;
        *) CONTAINERS_CONF=$CONF podman "$kind" rm -f "$id" >/dev/null 2>&1 || true ;;
      esac
    done
  done
}

up() {
  # Prints the environment to use; returns 1 when there is no engine to be had.
  if docker_answers; then
    docker_env
    return 0
  fi
  if ! command -v podman >/dev/null && ! can_install; then
    log "no Docker engine answers and podman cannot be installed here (needs root and apt)"
    return 1
  fi
  can_install && install_packages
  write_conf
  export CONTAINERS_CONF=$CONF
  build_images
  prune_images
  start_service
  podman_env
}

case "${1:-}" in
  up) up ;;
  env) if docker_answers; then docker_env; elif service_running; then podman_env; else exit 1; fi ;;
  down) clean; stop_service ;;
  clean) clean ;;
  run)
    shift
    [[ ${1:-} == -- ]] && shift
    [[ $# -gt 0 ]] || { echo "usage: $0 run -- CMD..." >&2; exit 2; }
    # Set up in a process of its own, so that errexit stops the set-up at its first
    # failure (bash ignores it inside an `if` condition).
    export EMQ_CONTAINERS_SOCKET=run-$$
    set_socket "$EMQ_CONTAINERS_SOCKET"
    started=
    if env_text=$(bash "$0" up); then
      eval "$env_text"
      [[ ${EMQ_CONTAINER_ENGINE} == podman ]] && started=yes
    else
      log "running without containers: the container tests will skip (fail under CI=true)"
    fi
    # The tests remove what they create; reap_dead catches what a killed run left.
    # On EXIT, so that an interrupted run stops its service too — but only once the
    # command has ended: bash runs a trap only after the foreground command returns,
    # so a TERM sent to this script never pulls the engine from under the tests.
    # The command runs in the foreground: an asynchronous one would start with
    # SIGINT ignored, and Ctrl-C would no longer reach it or its children.
    [[ -z $started ]] || trap 'reap_dead; stop_service' EXIT
    trap ':' TERM INT
    status=0
    "$@" || status=$?
    exit "$status"
    ;;
  *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
