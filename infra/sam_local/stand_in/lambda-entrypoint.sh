#!/bin/sh
# The stand-in image's entrypoint, behaving like AWS's: the handler is the one argument; without
# AWS_LAMBDA_RUNTIME_API (a plain `docker run`) the runtime runs under the emulator. `sam local` does not use it: it
# starts /var/rapid/aws-lambda-rie itself, which runs /var/runtime/bootstrap.
if [ $# -ne 1 ]; then
  echo "entrypoint requires the handler name to be the first argument" >&2
  exit 142
fi
export _HANDLER="$1"
if [ -z "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
  for emulator in /usr/local/bin/aws-lambda-rie /var/rapid/aws-lambda-rie; do
    [ -x "$emulator" ] && exec "$emulator" /var/runtime/bootstrap
  done
  echo "no runtime interface emulator in the image and AWS_LAMBDA_RUNTIME_API unset" >&2
  exit 142
fi
exec /var/runtime/bootstrap
