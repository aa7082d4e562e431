# The mirror daemon as a container image: contrib/kubernetes/ runs it as a
# DaemonSet. Build from the repository's root:
#   docker build -t mirror:0.1.0 .
#   docker run --rm mirror:0.1.0 --version
# `tests/packaging.rs` builds it and runs `mirror --version` and `mirror
# check` on every example in it, where a container engine answers.

# --- Build: Debian 12 with the packages of `cargo xtask deps` ----------------
# The official Rust image on Debian 12 (bookworm); mirror needs Rust 1.85 or
# newer. Set RUST_IMAGE to pin one.
ARG RUST_IMAGE=rust:1-bookworm
FROM ${RUST_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      clang-19 llvm-19 libelf-dev zlib1g-dev pkg-config linux-libc-dev make gcc \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mirror-user --bin mirror \
 && install -m 0755 target/release/mirror /usr/local/bin/mirror

# --- Runtime: Debian 12 slim, the binary and the one library it links -------
# mirror links libelf (libbpf's) and zlib dynamically; zlib is in the slim
# image, libelf1 is added; tzdata for session schedules in IANA zones
# (/usr/share/zoneinfo). Nothing else: no shell tools beyond the base.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libelf1 tzdata \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/mirror /usr/bin/mirror
# Root with the capabilities of contrib/mirror.service, given by the runtime
# (see contrib/kubernetes/daemonset.yaml); the network is the host's.
ENTRYPOINT ["/usr/bin/mirror"]
CMD ["run", "-c", "/etc/mirror/mirror.toml"]
