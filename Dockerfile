# bridge: one process per container (one core). Build: docker build -t bridge .
# Run: docker run -v /path/bridge.toml:/etc/bridge/bridge.toml:ro -p 8080:8080 bridge
# (Linted statically in make test with hadolint: tests/deploy/test_k8s.py.)

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.2.2
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN python -m build --wheel --outdir /wheels .

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="bridge" \
      org.opencontainers.image.description="Connects live telephone calls to applications over WebSocket"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
 && groupadd --system --gid 10001 bridge \
 && useradd --system --uid 10001 --gid bridge --home-dir /var/lib/bridge --shell /usr/sbin/nologin bridge \
 && install -d -o bridge -g bridge -m 0700 /var/lib/bridge /run/bridge \
 && install -d -m 0755 /etc/bridge
WORKDIR /var/lib/bridge
USER 10001:10001
# 8080 carrier/app WebSocket, 8081 admin (health, metrics, API), 7000 cluster.
EXPOSE 8080 8081 7000
STOPSIGNAL SIGTERM
ENTRYPOINT ["bridge"]
CMD ["run", "-c", "/etc/bridge/bridge.toml"]
