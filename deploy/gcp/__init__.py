"""Google Cloud profile: a Cloud Run service with an NVIDIA L4 GPU and the gcloud calls that apply it."""
