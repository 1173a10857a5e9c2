"""dfa export: state_dict -> checked, self-describing ONNX (and int8). Needs the train extra."""
