"""A stand-in OpenAI-compatible chat endpoint on 127.0.0.1 for the steps that ask a served model."""

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatEndpoint:
    """Answers each POST to /v1/chat/completions with `answer(body) -> (status, content)`: a chat completion
    holding `content` when the status is 200, an OpenAI error body otherwise."""

    def __init__(self, answer: Callable[[dict], tuple[int, str]]):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, content = answer(body)
                reply = {
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                }  # fmt: skip
                data = json.dumps(reply if status == 200 else {"error": {"message": "slow down"}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
