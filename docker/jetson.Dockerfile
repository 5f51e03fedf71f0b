# Device image for a Jetson Orin (JetPack 6.1/6.2, L4T r36.4: CUDA 12.6, TensorRT 10.3): what the device
# agent needs, nothing else. The agent itself travels with every job (deploy/tensorrt/bundle/agent.pyz), so
# this image does not change when the pipeline does. Build it ON the Jetson (or with buildx --platform
# linux/arm64):
#   docker build -f docker/jetson.Dockerfile -t bckd-agent:r36.4 .
# Run a bundle copied from the host (engine build, parity on the evaluation images, latency):
#   docker run --rm --runtime nvidia -v "$PWD/bundle:/bundle" bckd-agent:r36.4 /bundle/agent.pyz /bundle/job.json /bundle/out
# Match the base tag to the module's L4T (cat /etc/nv_tegra_release): a TensorRT engine only loads with
# the TensorRT version that built it, so build and run with the same image. JetPack 6.0 (r36.3, CUDA 12.2,
# TensorRT 8.6): --build-arg L4T_JETPACK=nvcr.io/nvidia/l4t-jetpack:r36.3.0 --build-arg CUDA_PYTHON="cuda-python>=12.2,<12.3".
# JetPack 5.1.x (r35, CUDA 11.4, TensorRT 8.5, Python 3.8): the agent runs, but --cuda-graph needs
# cuda-python 12 and is refused there; leave CUDA_PYTHON empty: --build-arg CUDA_PYTHON=
ARG L4T_JETPACK=nvcr.io/nvidia/l4t-jetpack:r36.4.0
FROM ${L4T_JETPACK}

# cuda-python must match the device's CUDA major (12 on JetPack 6; the agent's CUDA-graph path uses
# CUDA 12's cudaGraphInstantiate(graph, flags)); pinned to the minor l4t-jetpack r36.4 carries (12.6).
ARG CUDA_PYTHON="cuda-python>=12.6,<12.7"

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# pycuda compiles against the CUDA toolkit that l4t-jetpack carries: its setup finds it through CUDA_ROOT
# and nvcc on PATH (pycuda's configure.py / siteconf defaults), which the base image does not set.
ENV CUDA_ROOT=/usr/local/cuda \
    CUDA_HOME=/usr/local/cuda \
    PATH=/usr/local/cuda/bin:${PATH} \
    LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH}
# JetPack's TensorRT Python bindings come from NVIDIA's L4T apt repository (configured in the base).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip python3-dev python3-libnvinfer build-essential \
 && rm -rf /var/lib/apt/lists/* \
 && nvcc --version \
 && python3 -m pip install "numpy<2" pycuda ${CUDA_PYTHON}
# (pycuda.driver and tensorrt load libcuda, which only `docker run --runtime nvidia` provides: checked at run time.)

WORKDIR /bundle
ENTRYPOINT ["python3"]
CMD ["/bundle/agent.pyz", "/bundle/job.json", "/bundle/out"]
