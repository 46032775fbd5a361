# make test-containers: PostgreSQL from Debian's own package on the same debootstrap base
# as the pipeline's images (tests/containers/images.py), standing in for the official
# postgres image where no registry is reachable.  It honours the official image's
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB (a new cluster at each start, password
# authentication scram-sha-256 only); PGPORT and PGLISTEN pick the address (host network).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/*
COPY postgres-entrypoint.sh /usr/local/bin/iot-postgres
USER postgres
ENTRYPOINT ["/bin/sh", "/usr/local/bin/iot-postgres"]
