"""A file server on 127.0.0.1: plain URLs, and the Hugging Face Hub's resolve endpoint."""
import contextlib
import hashlib
import http.server
import threading
from typing import Optional


class Served:
  """What the server holds: `files[path] = bytes`, and how to misbehave.

  `truncate[path] = n` sends only the first n bytes of a file after announcing
  its full length; `hub_sha256[path]` overrides the SHA-256 the Hub endpoint
  announces (its ETag). `requests` records every (method, path) received.
  """

  def __init__(self):
    self.files: dict[str, bytes] = {}
    self.truncate: dict[str, int] = {}
    self.hub_sha256: dict[str, str] = {}
    self.requests: list[tuple[str, str]] = []
    self.url = ''


def _handler(served: Served):
  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):
      pass

    def _send(self, body: bool):
      path = self.path.split('?')[0]
      served.requests.append((self.command, path))
      data = served.files.get(path)
      if data is None:
        self.send_response(404)
        self.send_header('Content-Length', '0')
        self.end_headers()
        return
      self.send_response(200)
      self.send_header('Content-Length', str(len(data)))
      self.send_header('Content-Type', 'application/octet-stream')
      if '/resolve/' in path:  # The Hub's headers for an LFS file.
        sha = served.hub_sha256.get(path, hashlib.sha256(data).hexdigest())
        self.send_header('ETag', f'"{sha}"')
        self.send_header('X-Repo-Commit', '0' * 40)
      self.end_headers()
      if body:
        sent = data[:served.truncate.get(path, len(data))]
        self.wfile.write(sent)
        if len(sent) < len(data):
          self.close_connection = True
          self.wfile.flush()
          self.connection.shutdown(2)

    def do_HEAD(self):
      self._send(body=False)

    def do_GET(self):
      self._send(body=True)

  return Handler


@contextlib.contextmanager
def serving(served: Optional[Served] = None):
  """Serves `served` on 127.0.0.1 (a free port) for the duration; yields it with `url` set."""
  served = served or Served()
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _handler(served))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  served.url = f'http://127.0.0.1:{server.server_address[1]}'
  try:
    yield served
  finally:
    server.shutdown()
    server.server_close()
