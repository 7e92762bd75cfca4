#!/usr/bin/env bash
# Build everything the Docker deployment needs (README: "HA deployment with Docker"):
#   1. st2kv-node and st2kv as statically linked release binaries (x86_64-unknown-linux-gnu with
#      crt-static; honours CARGO_TARGET_DIR);
#   2. the image's root filesystem under target/docker/ (the only part of the repo the Docker
#      build context lets through, see .dockerignore): the binaries in /usr/local/bin, an
#      /etc/passwd naming uid 10001, /tmp, and an empty /data owned by 10001;
#   3. deploy/secrets/admin-password, cluster-secret and keyring.json, each made once if missing;
#   4. the image st2kv:${ST2KV_IMAGE_TAG:-local} (FROM scratch, nothing pulled), via compose build.
# Then `docker compose up -d` (or `docker-compose up -d`) starts the 3-node cluster.
#
#   scripts/docker-build.sh              all four steps
#   scripts/docker-build.sh --no-image   steps 1-3 only (no Docker needed)
set -euo pipefail
cd "$(dirname "$0")/.."

build_image=1
case "${1:-}" in
  "") ;;
  --no-image) build_image=0 ;;
  -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: scripts/docker-build.sh [--no-image]" >&2; exit 2 ;;
esac

# Compose v2 (`docker compose`) when installed, else v1 (`docker-compose`).
compose() {
  if docker compose version >/dev/null 2>&1; then
    docker compose "$@"
  elif command -v docker-compose >/dev/null 2>&1; then
    docker-compose "$@"
  else
    echo "docker-build.sh: neither \`docker compose\` nor \`docker-compose\` is installed" >&2
    return 1
  fi
}

triple=x86_64-unknown-linux-gnu
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
bin_dir="$target_dir/$triple/release"
stage="$PWD/target/docker"

echo "== static release build of st2kv-node and st2kv ($bin_dir)"
# Without the release profile's debug info (an image of 110 MB instead of about 25 MB); panics
# still name their functions.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  CARGO_PROFILE_RELEASE_DEBUG="${CARGO_PROFILE_RELEASE_DEBUG:-0}" \
  CARGO_PROFILE_RELEASE_STRIP="${CARGO_PROFILE_RELEASE_STRIP:-debuginfo}" \
  cargo build --release --target "$triple" -p st2kv-node -p st2kv-cli
for b in st2kv-node st2kv; do
  # A FROM scratch image has no dynamic loader: refuse anything that would need one.
  if command -v readelf >/dev/null 2>&1 && readelf -lW "$bin_dir/$b" | grep -q 'Requesting program interpreter'; then
    echo "docker-build.sh: $bin_dir/$b is dynamically linked" >&2
    exit 1
  fi
done

echo "== image root filesystem ($stage)"
rm -rf "$stage"
mkdir -p "$stage/rootfs/usr/local/bin" "$stage/rootfs/etc" "$stage/rootfs/tmp" "$stage/data"
install -m 0755 "$bin_dir/st2kv-node" "$bin_dir/st2kv" "$stage/rootfs/usr/local/bin/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nst2kv:x:10001:10001:st2kv:/tmp:/sbin/nologin\n' \
  >"$stage/rootfs/etc/passwd"
printf 'root:x:0:\nst2kv:x:10001:\n' >"$stage/rootfs/etc/group"
chmod -R u=rwX,go=rX "$stage"
chmod 1777 "$stage/rootfs/tmp"

echo "== secrets (deploy/secrets, made once)"
secrets="$PWD/deploy/secrets"
mkdir -p "$secrets"
# The directory is private to you; the files in it are world-readable (0644) because the nodes
# run as uid 10001 and read the bind-mounted copies (Compose ignores a file secret's uid/mode).
chmod 0700 "$secrets"
(
  umask 077
  [ -s "$secrets/admin-password" ] || head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secrets/admin-password"
  [ -s "$secrets/cluster-secret" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secrets/cluster-secret"
  [ -s "$secrets/keyring.json" ] || "$bin_dir/st2kv" keygen --key-path "$secrets/keyring.json" >/dev/null
)
chmod 0644 "$secrets/admin-password" "$secrets/cluster-secret" "$secrets/keyring.json"

if [ "$build_image" = 1 ]; then
  echo "== image st2kv:${ST2KV_IMAGE_TAG:-local} (FROM scratch)"
  compose build
  docker image ls "st2kv:${ST2KV_IMAGE_TAG:-local}"
fi

rel_bin="${bin_dir#"$PWD"/}"
cat <<MSG
== done. Start the cluster (n1, n2, n3; API/auth on 127.0.0.1:9101/9100, :9111/9110, :9121/9120):
  docker compose up -d          # or: docker-compose up -d
  $rel_bin/st2kv --url http://localhost:9101,http://localhost:9111,http://localhost:9121 \\
    login st2admin -p "\$(cat deploy/secrets/admin-password)"
  docker compose down -v        # removes the cluster and its data
MSG
