"""Running on AWS: data transfer to and from S3, stack outputs -> profile values."""
