# syntax=docker/dockerfile:1
# One image for every paw process; the compose file picks the subcommand (migrate, receiver, worker,
# sandbox). No secrets are baked in: they come from the environment at run time (README,
# "Configuration"). No HEALTHCHECK here: each process answers on its own port and the one-shot
# migration on none, so docker-compose.yml probes the receiver, the worker and the sandbox.
FROM python:3.11.7-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The runtime packages come from uv.lock (README, at the top): uv exports them with their hashes
# (refusing a lock that no longer matches pyproject.toml) and pip installs exactly those; then paw
# itself, with no dependency resolution of its own. uv stays in this stage.
RUN pip install --no-cache-dir uv==0.13.9
COPY pyproject.toml uv.lock README.md ./
RUN uv export --locked --no-dev --no-emit-project --quiet --output-file /tmp/requirements.txt \
    && pip install --no-cache-dir --require-hashes --prefix=/install -r /tmp/requirements.txt
COPY worker worker
COPY webhooks webhooks
COPY schemas schemas
COPY sandbox sandbox
RUN pip install --no-cache-dir --no-deps --prefix=/install .

FROM python:3.11.7-slim-bookworm
RUN groupadd --system --gid 10001 paw \
    && useradd --system --uid 10001 --gid paw --no-create-home --shell /usr/sbin/nologin paw
COPY --from=build /install /usr/local
# PAW_ADMIN_HOST: the admin servers (probes, /metrics) listen on every interface of the container, so
# that the kubelet and Prometheus reach them; publish 9100/9101 to no one outside the platform.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PAW_LOG_FORMAT=json \
    PAW_ADMIN_HOST=0.0.0.0
USER 10001:10001
# receiver 8080, sandbox 8090; admin servers: worker 9100 (PAW_ADMIN_PORT), receiver 9101 (--admin-port)
EXPOSE 8080 8090 9100 9101
ENTRYPOINT ["paw"]
CMD ["worker"]
