terraform {
  required_version = ">= 1.5.0"

  required_providers {
    digitalocean = {
      source  = "digitalocean/digitalocean"
      version = "~> 2.68"
    }
  }

  # State lives in a DigitalOcean Spaces bucket (S3-compatible). The bucket, key and
  # endpoint are given at `terraform init -backend-config=...` (see backend.hcl.example);
  # the Spaces key pair comes from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
  backend "s3" {}
}
