# The filter as the OCI image Istio's WasmPlugin pulls: nothing but `plugin.wasm` at the root,
# in one layer (the "compat" variant of the Wasm image specification).
#
# Built by `make image-filter` from a context holding only the built filter, renamed:
#   mkdir -p target/image/filter
#   cp target/wasm32-wasip1/release/inference_gate.wasm target/image/filter/plugin.wasm
#   docker build -f deploy/images/filter.Dockerfile -t REGISTRY/inference-gate/filter:0.1.0 \
#     target/image/filter
# Without a container engine, `make oci-filter` writes the same image as an OCI layout
# (deploy/images/filter_oci_layout.py).
FROM scratch
LABEL org.opencontainers.image.title="inference-gate" \
      org.opencontainers.image.description="inference-gate Proxy-Wasm filter" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY plugin.wasm /plugin.wasm
