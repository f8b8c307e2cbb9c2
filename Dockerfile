# Emotion Studio on Hugging Face Spaces (sdk: docker, app_port: 8501) or any Docker host:
#   docker build -t emotion-studio . && docker run -p 8501:8501 emotion-studio
# The image starts like a fresh machine: the synthetic demo set, the shipped model in
# checkpoints/default/ when there is one, no runs. Runs, the job queue and caches live in
# the container (lost on restart unless /home/user/app/checkpoints is a mounted volume).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tini reaps the background training processes the app starts (streamlit would be PID 1);
# libgl1/libglib2.0-0 cover OpenCV's shared-library needs (grad-cam pulls in OpenCV)
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# CPU builds of torch/torchvision by default (Spaces' free hardware is a CPU; the CUDA wheels
# are gigabytes). For a GPU Space: --build-arg TORCH_INDEX_URL=https://pypi.org/simple
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements.txt /tmp/requirements.txt
RUN pip install --index-url "$TORCH_INDEX_URL" torch torchvision \
    && pip install -r /tmp/requirements.txt

# Spaces run the container as uid 1000: give that user a writable HOME and app folder
RUN useradd --create-home --uid 1000 user \
    && mkdir -p /home/user/app && chown user:user /home/user/app
USER user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    EMOTION_CACHE_DIR=/home/user/.cache/emotion-studio \
    HF_HOME=/home/user/.cache/huggingface \
    MPLCONFIGDIR=/home/user/.cache/matplotlib \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    EMOTION_DATA_ROOTS=/home/user/app/data
# A Space is public: visitors may load datasets from /home/user/app/data only (plus 'synthetic' and
# hf:<id>), not from any folder of the container (docs/RELIABILITY.md). Override with -e or a Space variable.
WORKDIR /home/user/app
COPY --chown=user . /home/user/app
RUN mkdir -p checkpoints/runs data "$EMOTION_CACHE_DIR"

EXPOSE 8501
ENTRYPOINT ["tini", "--"]
# XSRF protection off: Spaces serve the app inside an iframe, where Streamlit's XSRF cookie is
# blocked and uploads would fail with 403 (huggingface.co/docs/hub/spaces-cookie-limitations)
CMD ["streamlit", "run", "app.py", "--server.port", "8501", "--server.address", "0.0.0.0", \
     "--server.enableXsrfProtection", "false"]
