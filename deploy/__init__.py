"""Cloud deploy profiles (AWS EC2 GPU Auto Scaling group, Cloud Run with a GPU) and `batchserve deploy`."""
