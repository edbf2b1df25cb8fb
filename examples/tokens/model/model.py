"""A decoupled (streaming) Python-backend model: one request, many responses.

It splits ``text_input`` on whitespace and sends each word as its own response
(at most ``max_tokens`` of them), the way a language model streams tokens, then
closes the stream with a final flag and no data. A ``max_tokens`` below 1 is
answered with an error response naming it.
"""

import numpy as np
import triton_python_backend_utils as pb_utils


def _scalar(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            text = _scalar(request, "text_input")
            text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
            limit = int(_scalar(request, "max_tokens"))
            if limit < 1:
                error = pb_utils.TritonError("max_tokens must be at least 1")
                sender.send(
                    pb_utils.InferenceResponse(error=error),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                continue
            for word in text.split()[:limit]:
                output = pb_utils.Tensor(
                    "text_output", np.array([word.encode("utf-8")], dtype=np.object_)
                )
                sender.send(pb_utils.InferenceResponse(output_tensors=[output]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        # Decoupled: every answer went through the response senders.
        return None
