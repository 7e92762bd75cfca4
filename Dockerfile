# st2kv image: nothing but our two statically linked binaries (no base image, no shell, no
# package manager; nothing is pulled from a registry). The build context is the repo root, and
# .dockerignore lets through only target/docker/rootfs/, which scripts/docker-build.sh fills:
#
#   scripts/docker-build.sh            # static release build + rootfs + secrets + compose build
#   docker compose up -d               # (or docker-compose up -d) a 3-node cluster, see README
#
# A first COPY failing on target/docker/rootfs ("file does not exist", "not found") means
# scripts/docker-build.sh has not been run yet.
FROM scratch
# /usr/local/bin/st2kv-node, /usr/local/bin/st2kv, /etc/passwd + /etc/group (uid 10001 "st2kv"),
# /tmp (1777).
COPY target/docker/rootfs/ /
# The data dir belongs to the runtime user; a fresh named volume mounted on /data inherits it.
COPY --chown=10001:10001 target/docker/data/ /data/
USER 10001:10001
WORKDIR /data
ENV ST2KV_DATA_DIR=/data \
    ST2KV_API_BIND=0.0.0.0:9101 \
    ST2KV_AUTH_BIND=0.0.0.0:9100 \
    ST2KV_PEER_BIND=0.0.0.0:9300
EXPOSE 9101 9100 9300
VOLUME ["/data"]
# Exec form: there is no shell. Probes this node's /v1/health/ready on its own API listener.
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/st2kv-node", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/st2kv-node"]
