# The Flowyard control plane image: `flowyard server start` on 0.0.0.0:7700, its database
# from FLOWYARD_DB_URL (PostgreSQL for several replicas), its first admin token from
# FLOWYARD_ADMIN_TOKEN. It needs no Kubernetes API access and writes only to its data
# directory, so it runs with a read-only root filesystem and an emptyDir there
# (`flowyard server install` prints such a Deployment).
# Built from the root of a Flowyard checkout (the package is installed from it, not an index):
#   docker build -t registry.example.com/flowyard:0.1.0 .
# The steps up to `pip install` are those of Dockerfile.agent, so the two builds share them.
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 flowyard
WORKDIR /opt/flowyard
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY control_plane ./control_plane
COPY agent ./agent
COPY engine ./engine
COPY flowyard_common ./flowyard_common
COPY flowyard_sdk ./flowyard_sdk
RUN pip install --no-cache-dir . && rm -rf /opt/flowyard/*

# The data directory: admin.token when no FLOWYARD_ADMIN_TOKEN is given, SQLite without a
# FLOWYARD_DB_URL. Mount a volume here when the root filesystem is read-only.
RUN install -d -o 10001 -g 10001 -m 0700 /var/lib/flowyard
ENV FLOWYARD_DATA_DIR=/var/lib/flowyard \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001
WORKDIR /home/flowyard
EXPOSE 7700 7780
# Kubernetes probes it with the standard gRPC health service (`grpc: {port: 7700}`).
ENTRYPOINT ["flowyard", "server", "start", "--host", "0.0.0.0"]
