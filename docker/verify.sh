#!/usr/bin/env bash
# Builds the repository's Dockerfile, unchanged, and checks the image the way an operator uses it.
# For a maintainer to rerun by hand, as root, on a Debian bookworm machine with no registry of
# images (python:3.12-slim can't be pulled): not part of CI or the test suite.
#
#   sudo bash docker/verify.sh [REF]       # REF: the commit to build (default HEAD)
#
# What it does:
#   1. Starts a Docker engine if none answers (Debian's docker.io, installed if missing), with no
#      bridge and no iptables rules: builds use the host's network, containers run with none.
#   2. If no image is tagged python:3.12-slim, makes a stand-in from Debian packages: debootstrap
#      (minbase, bookworm), then CPython 3.12 in /usr/local with pip on PATH, copied from pyenv
#      when this machine has a 3.12 there, else Debian's python3 (3.11) in a venv first on PATH.
#      The host's local CA certificates are trusted in it (PIP_CERT) so pip works behind a proxy
#      that terminates TLS. REBUILD_BASE=1 makes it again.
#   3. `docker build` of a `git archive` of REF (so untracked files never enter the context).
#   4. Runs the image with --network none and a fresh named volume, and checks from inside it:
#      non-root user, migrations, /healthz, /readyz, a token from `workshop token create`, a POST
#      to the ingest API, the essay page, the feeds, HEALTHCHECK healthy, `docker stop` within
#      the grace period with exit code 0 and no temp folder left behind, and the data (essay and
#      token) surviving a restart and a new container on the same volume.
# It removes its containers and volume at the end; the images stay, for the next run's cache.
# An engine it started is stopped again unless KEEP_ENGINE=1.
set -euo pipefail

REF=${1:-HEAD}
IMAGE=${IMAGE:-workshop:verify}
BASE=python:3.12-slim
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
WORK=$(mktemp -d /tmp/workshop-docker-verify.XXXXXX)
NAME=workshop-verify-$$
VOLUME=workshop-verify-data-$$
STARTED_ENGINE=

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
    docker rm -f "$NAME" "$NAME-2" >/dev/null 2>&1 || true
    docker volume rm "$VOLUME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
    if [[ -n $STARTED_ENGINE && -z ${KEEP_ENGINE:-} ]]; then
        kill "$STARTED_ENGINE" 2>/dev/null || true
        wait "$STARTED_ENGINE" 2>/dev/null || true
    fi
}
trap cleanup EXIT

[[ $(id -u) == 0 ]] || fail "run as root (dockerd, debootstrap and chroot need it)"
REPO=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)

# ---- 1. a Docker engine
if ! docker info >/dev/null 2>&1; then
    if ! command -v dockerd >/dev/null; then
        say "installing Debian's docker.io"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
    fi
    say "starting dockerd (log: /tmp/dockerd-verify.log)"
    dockerd --iptables=false --ip6tables=false --bridge=none >/tmp/dockerd-verify.log 2>&1 &
    STARTED_ENGINE=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || fail "dockerd did not start: see /tmp/dockerd-verify.log"
fi
docker version --format 'engine {{.Server.Version}}, client {{.Client.Version}}'

# ---- 2. a stand-in for python:3.12-slim
if [[ -n ${REBUILD_BASE:-} ]] || ! docker image inspect "$BASE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    ROOT=$WORK/rootfs
    say "debootstrap $SUITE into $ROOT"
    debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail "$WORK/debootstrap.log"; fail "debootstrap"; }
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true
    in_root() {
        chroot "$ROOT" /usr/bin/env -i HOME=/root DEBIAN_FRONTEND=noninteractive \
            PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /bin/sh -ec "$1"
    }
    PY312=$(ls -d "${PYENV_ROOT:-/root/.pyenv}"/versions/3.12.* 2>/dev/null | sort -V | tail -1 || true)
    # What python:3.12-slim installs beside its own CPython build (which, like this, has no Tk).
    LIBS="ca-certificates netbase tzdata libssl3 libsqlite3-0 libffi8 libbz2-1.0 liblzma5 zlib1g"
    LIBS+=" libreadline8 libncursesw6 libuuid1 libgdbm6 libgdbm-compat4 libexpat1 libnsl2 libtirpc3"
    if [[ -n $PY312 ]]; then
        say "stand-in: Debian $SUITE minbase + CPython $(basename "$PY312") from $PY312"
        in_root "apt-get update -qq && apt-get install -y -qq --no-install-recommends $LIBS >/dev/null 2>&1"
        tar -C "$PY312" -c --exclude=./lib/python3.12/site-packages --exclude=./lib/python3.12/test \
            --exclude=__pycache__ . | tar -C "$ROOT/usr/local" -x
        mkdir -p "$ROOT/usr/local/lib/python3.12/site-packages"
        # pyenv's scripts name its own interpreter; the copy's live in /usr/local/bin.
        { grep -rlI "^#!$PY312/bin/" "$ROOT/usr/local/bin" || true; } | xargs -r sed -i "1s|^#!$PY312/bin/|#!/usr/local/bin/|"
        in_root "update-ca-certificates >/dev/null 2>&1; ldconfig
                 python3.12 -m ensurepip --default-pip >/dev/null
                 python3.12 -m pip install -q --no-cache-dir --upgrade pip
                 ln -sf python3.12 /usr/local/bin/python; ln -sf python3.12 /usr/local/bin/python3
                 ln -sf pip3.12 /usr/local/bin/pip; ln -sf pip3.12 /usr/local/bin/pip3"
        BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    else
        say "stand-in: Debian $SUITE minbase + Debian's python3 in a venv (no pyenv 3.12 here)"
        in_root "apt-get update -qq && apt-get install -y -qq --no-install-recommends $LIBS python3 python3-venv >/dev/null 2>&1
                 update-ca-certificates >/dev/null 2>&1
                 python3 -m venv /usr/local/venv
                 /usr/local/venv/bin/pip install -q --no-cache-dir --upgrade pip"
        BASE_PATH=/usr/local/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    fi
    in_root "apt-get clean; rm -rf /var/lib/apt/lists/* /root/.cache; python --version; pip --version"
    missing=$(chroot "$ROOT" /bin/sh -c 'for f in $(find / -xdev -path "*/lib-dynload/*.so" ! -name "*tkinter*"); do ldd "$f" | grep "not found"; done' || true)
    [[ -z $missing ]] || fail "stand-in python lacks shared libraries: $missing"
    rm -f "$ROOT/etc/resolv.conf"
    tar -C "$ROOT" -c . | docker import \
        --change "ENV PATH=$BASE_PATH" --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' - "$BASE" >/dev/null
    rm -rf "$ROOT"
fi
docker run --rm --network none "$BASE" sh -c 'echo "base: $(python --version), $(pip --version | cut -d" " -f1-2), $(id -un)"'

# ---- 3. build from a clean copy of REF
say "docker build of $(git -C "$REPO" rev-parse --short "$REF")"
mkdir "$WORK/ctx"
git -C "$REPO" archive "$REF" | tar -x -C "$WORK/ctx"
docker build --network host -t "$IMAGE" "$WORK/ctx" >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log"; fail "docker build"; }
grep -E '^Sending build context|^Successfully built [0-9a-f]+$' "$WORK/build.log" || true

# ---- 4. run and check
http() {  # http METHOD PATH [TOKEN] [JSON]: "<status> <location>" then the body, from inside
    docker exec -i "$NAME" python - "$@" <<'EOF'
import sys, urllib.request, urllib.error
method, path = sys.argv[1], sys.argv[2]
req = urllib.request.Request("http://127.0.0.1:8000" + path, method=method,
                             data=sys.argv[4].encode() if len(sys.argv) > 4 and sys.argv[4] else None)
if len(sys.argv) > 3 and sys.argv[3]:
    req.add_header("Authorization", "Bearer " + sys.argv[3])
    req.add_header("Content-Type", "application/json")
try:
    r = urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as e:
    r = e
print(r.status, r.headers.get("Location", "-"))
print(r.read().decode("utf-8", "replace"))
EOF
}
expect() {  # expect STATUS METHOD PATH [TOKEN] [JSON] [TEXT]: the status, and TEXT in the body
    local want=$1 text=${6:-} out
    out=$(http "${@:2:4}") || fail "$2 $3: no answer"
    [[ ${out%% *} == "$want" ]] || fail "$2 $3: wanted $want, got: $(head -c 300 <<<"$out")"
    [[ -z $text || $out == *"$text"* ]] || fail "$2 $3: no '$text' in the answer"
    printf '  %-34s %s\n' "$2 $3" "$(head -1 <<<"$out")"
}
wait_ready() {  # wait_ready CONTAINER: until /healthz answers 200 (two minutes at most)
    local started=$SECONDS
    until docker exec "$1" python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" 2>/dev/null; do
        [[ $(docker inspect -f '{{.State.Running}}' "$1") == true ]] || { docker logs "$1" | tail; fail "$1 exited"; }
        (( SECONDS - started < 120 )) || fail "$1: /healthz did not answer in 120 s"
        sleep 1
    done
    echo "  /healthz answered $(( SECONDS - started )) s after start"
}
essay() {  # essay CYCLE TITLE: a post body as the engine sends it
    printf '{"title": "%s", "body": "The minds disagreed about *why* the index held up.", "cycle": %s,
      "published_at": "2026-04-05T15:04:00Z", "debate": {"outcome": "split", "conviction": 0.42,
      "minds": [{"name": "Macro", "confidence": 0.35}, {"name": "Flow", "confidence": 0.6}]},
      "tags": ["QQQ", "breadth"], "stories": [{"title": "Narrow Leadership", "status": "developing"}]}' "$2" "$1"
}

say "run (no network, volume $VOLUME)"
docker run -d --name "$NAME" --network none -v "$VOLUME:/data" "$IMAGE" >/dev/null
wait_ready "$NAME"
user=$(docker exec "$NAME" id -un); uids=$(docker top "$NAME" -o pid,uid | awk 'NR > 1 {print $2}' | sort -u | tr '\n' ' ')
[[ $user == workshop && $uids == "10001 " ]] || fail "runs as $user, processes' uids: $uids"
echo "  user: $user, every process uid 10001 ($(docker top "$NAME" -o pid,uid | tail -n +2 | wc -l) processes)"
docker logs "$NAME" 2>&1 | grep -q 'database at head' || fail "no 'database at head' in the log"
echo "  log: database at head"
expect 200 GET /healthz
expect 200 GET /readyz "" "" ready
TOKEN=$(docker exec "$NAME" workshop token create verify 2>/dev/null)
[[ $TOKEN == wk_* ]] || fail "workshop token create printed: $TOKEN"
echo "  token: ${TOKEN:0:6}... from 'docker exec $NAME workshop token create verify'"
expect 401 POST /api/v1/posts wk_wrong "$(essay 9001 'Docker Check Essay')"
expect 201 POST /api/v1/posts "$TOKEN" "$(essay 9001 'Docker Check Essay')" /read/1/docker-check-essay
expect 200 GET /read/1/docker-check-essay "" "" '<title>Docker Check Essay'
expect 200 GET / "" "" 'Docker Check Essay'
expect 200 GET /feed.xml "" "" '<title>Docker Check Essay</title>'
expect 200 GET /atom.xml "" "" 'Docker Check Essay'
expect 200 GET /feed.json "" "" 'Docker Check Essay'
expect 200 GET /tags/qqq/feed.xml "" "" 'Docker Check Essay'
expect 200 GET /sitemap.xml "" "" /read/1/docker-check-essay

say "HEALTHCHECK (its first run comes one interval, 30 s, after the start)"
for _ in $(seq 90); do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$NAME")
    [[ $health == starting ]] || break
    sleep 1
done
[[ $health == healthy ]] || fail "health: $health"
echo "  health: $health"

say "docker stop (10 s grace)"
t0=$(date +%s.%N); docker stop -t 10 "$NAME" >/dev/null; t1=$(date +%s.%N)
code=$(docker inspect -f '{{.State.ExitCode}}' "$NAME")
secs=$(python3 -c "print(round($t1 - $t0, 1))")
[[ $code == 0 ]] || fail "exit code $code after docker stop"
python3 -c "import sys; sys.exit($t1 - $t0 >= 10)" || fail "took the whole grace period ($secs s): killed"
left=$(docker diff "$NAME" | grep -E '^A /tmp/' || true)
[[ -z $left ]] || fail "temp folders left behind: $left"
echo "  stopped in $secs s, exit code $code, nothing left in /tmp"

say "restart, then a new container on the same volume"
docker start "$NAME" >/dev/null
wait_ready "$NAME"
expect 200 GET /read/1/docker-check-essay "" "" '<title>Docker Check Essay'
docker stop "$NAME" >/dev/null
docker rm "$NAME" >/dev/null
docker run -d --name "$NAME" --network none -v "$VOLUME:/data" "$IMAGE" >/dev/null
wait_ready "$NAME"
expect 200 GET /read/1/docker-check-essay "" "" '<title>Docker Check Essay'
expect 201 POST /api/v1/posts "$TOKEN" "$(essay 9002 'After The Restart')" /read/2/after-the-restart
expect 200 GET /api/v1/posts "" "" 'Docker Check Essay'
docker stop "$NAME" >/dev/null
[[ $(docker inspect -f '{{.State.ExitCode}}' "$NAME") == 0 ]] || fail "second stop: not exit code 0"

say "all checks passed ($IMAGE, base: $(docker run --rm --network none "$BASE" python --version))"
