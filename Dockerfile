# syntax=docker/dockerfile:1
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker worker
COPY webhooks webhooks
COPY schemas schemas
COPY sandbox sandbox
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11.7-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home paw
COPY --from=build /install /usr/local
USER 10001
ENV PAW_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["paw"]
CMD ["worker"]
