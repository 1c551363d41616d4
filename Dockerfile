# mergeserve image: built from Debian 12 packages only.
#   docker build -t mergeserve .
#   docker run --rm -v /models:/models mergeserve merge /models/ties.yaml /models/out
FROM debian:12 AS build
WORKDIR /src
COPY scripts/install_deps.sh scripts/
RUN scripts/install_deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMERGESERVE_BUILD_TESTS=OFF \
 && cmake --build /build --target mergeserve \
 && install -D /build/mergeserve /out/usr/local/bin/mergeserve

FROM debian:12-slim
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libtorch1.13 libabsl20220623 libyaml-cpp0.7 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /
RUN useradd --system --uid 10001 mergeserve
USER mergeserve
ENTRYPOINT ["/usr/local/bin/mergeserve"]
CMD ["--help"]
