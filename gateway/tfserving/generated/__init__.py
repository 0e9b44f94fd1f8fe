"""Python modules generated from proto/tfserving/*.proto by scripts/gen_proto.py.

Do not edit these files by hand: change the .proto and rerun the script.
"""
