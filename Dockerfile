# mergeserve image, built from Debian 12 packages only.
#   docker build -t mergeserve .
#   docker run --rm -p 50051:50051 -v /models:/models -v /certs:/certs:ro mergeserve \
#     serve --auth token --tls-cert /certs/tls.crt --tls-key /certs/tls.key \
#     --data-dir /data --allow-root /models
#   (create tokens with: docker exec ... mergeserve token create --data-dir /data ...;
#   a quick local try without TLS or tokens needs --listen 0.0.0.0:50051 --insecure)
#   docker run --rm -v /models:/models mergeserve merge /models/ties.yaml /models/out
FROM debian:12 AS build
WORKDIR /src
COPY scripts/install_deps.sh scripts/
RUN scripts/install_deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMERGESERVE_BUILD_TESTS=OFF \
 && cmake --build /build --target mergeserve mergectl mergeserve_python_stubs \
 && install -D /build/mergeserve /out/usr/local/bin/mergeserve \
 && install -D /build/libmergeserve_aten.so /out/usr/local/lib/mergeserve/libmergeserve_aten.so \
 && install -D /build/mergectl /out/usr/local/bin/mergectl \
 && mkdir -p /out/usr/local/lib/mergeserve/python \
 && cp -r /build/python/mergeserve client/python/mergeserve_client /out/usr/local/lib/mergeserve/python/

FROM debian:12-slim
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libtorch1.13 libabsl20220623 libyaml-cpp0.7 libgrpc++1.51 libprotobuf32 libre2-9 \
      libprometheus-cpp-core1.0 libopenblas0-pthread libsqlite3-0 libpq5 libssl3 \
      python3-grpcio python3-protobuf ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /
ENV PYTHONPATH=/usr/local/lib/mergeserve/python \
    MERGESERVE_PY_STUBS=/usr/local/lib/mergeserve/python
RUN useradd --system --uid 10001 --create-home mergeserve && mkdir -p /data \
 && chown mergeserve /data
USER mergeserve
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/mergeserve"]
CMD ["serve", "--data-dir", "/data", "--allow-root", "/models"]
