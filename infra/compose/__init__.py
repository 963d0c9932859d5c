"""Support for docker-compose.localstack.yml: the one-shot deploy step and the image build helpers."""
