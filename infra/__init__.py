"""Local infrastructure: host-mode LocalStack, its Lambda executor, and deploying template.yaml onto it."""
