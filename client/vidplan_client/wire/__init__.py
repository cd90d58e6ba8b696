"""Generated from proto/vidplan/v1/vidplan.proto by scripts/gen_proto.py; do not edit."""
