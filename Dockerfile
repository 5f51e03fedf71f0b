# Host image: distillation, export, ONNX Runtime and OpenVINO targets on CPU (torch from PyPI carries CUDA).
#   docker build -t bckd-pipeline .
#   docker run --rm -v "$PWD/runs:/work/runs" bckd-pipeline run --out /work/runs/demo
# Mount datasets read-only and pass --data KIND:/data/PATH; nothing is downloaded at run time.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /opt/bckd-pipeline
COPY pyproject.toml README.md ./
COPY bckd_pipeline ./bckd_pipeline
RUN pip install --upgrade pip && pip install ".[openvino]"

WORKDIR /work
ENTRYPOINT ["bckd-pipeline"]
CMD ["run", "--out", "/work/runs/demo"]
