# Host image: distillation, export, ONNX Runtime and OpenVINO targets on CPU (torch from PyPI carries CUDA),
# and the host half of the TensorRT/Jetson targets (the Q/DQ ONNX, the device bundle, --device ssh://).
#   docker build -t bckd-pipeline .
#   docker run --rm -v "$PWD/runs:/work/runs" bckd-pipeline run --out /work/runs/demo
#   docker run --rm -v "$PWD/runs:/work/runs" -v "$HOME/.ssh:/root/.ssh:ro" bckd-pipeline \
#       run --target jetson --device ssh://nvidia@jetson.local --out /work/runs/jetson
# Mount datasets read-only and pass --data KIND:/data/PATH; nothing is downloaded at run time.
# The device side (TensorRT on a Jetson) has its own image: docker/jetson.Dockerfile.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# ssh/scp carry the device bundle to a Jetson (--device ssh://...).
RUN apt-get update && apt-get install -y --no-install-recommends openssh-client && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/bckd-pipeline
COPY pyproject.toml README.md ./
COPY bckd_pipeline ./bckd_pipeline
RUN pip install --upgrade pip && pip install ".[openvino]"

WORKDIR /work
ENTRYPOINT ["bckd-pipeline"]
CMD ["run", "--out", "/work/runs/demo"]
