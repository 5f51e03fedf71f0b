# Device image for a Jetson Orin (JetPack 6.x, L4T r36): what the device agent needs, nothing else.
# The agent itself travels with every job (deploy/tensorrt/bundle/agent.pyz), so this image does not
# change when the pipeline does. Build it ON the Jetson (or with buildx --platform linux/arm64):
#   docker build -f docker/jetson.Dockerfile -t bckd-agent:r36.4 .
# Run a bundle copied from the host (engine build, parity on the evaluation images, latency):
#   docker run --rm --runtime nvidia -v "$PWD/bundle:/bundle" bckd-agent:r36.4 /bundle/agent.pyz /bundle/job.json /bundle/out
# Match the base tag to the module's L4T (cat /etc/nv_tegra_release): a TensorRT engine only loads with
# the TensorRT version that built it, so build and run with the same image.
ARG L4T_JETPACK=nvcr.io/nvidia/l4t-jetpack:r36.4.0
FROM ${L4T_JETPACK}

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# JetPack's TensorRT Python bindings come from NVIDIA's L4T apt repository (configured in the base);
# pycuda compiles against the CUDA toolkit that l4t-jetpack carries.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip python3-dev python3-libnvinfer build-essential \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m pip install "numpy<2" pycuda

WORKDIR /bundle
ENTRYPOINT ["python3"]
CMD ["/bundle/agent.pyz", "/bundle/job.json", "/bundle/out"]
