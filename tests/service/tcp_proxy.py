"""A small threaded TCP proxy on 127.0.0.1 that a test can cut and restore.

Point a client at ``proxy.port`` instead of the server's. ``cut()`` is an outage as a client
sees one when its server restarts: every open connection is closed under it and new connections
are refused (nothing listens on the port). ``restore()`` listens again on the same port.
"""

import socket
import threading


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.accepted = 0
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *_exc) -> None:
        self.cut()

    def restore(self) -> None:
        """Accept connections (again) on the same port."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and close the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone does not.
            _shutdown(listener)
            listener.close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            _shutdown(connection)  # wakes its pumps, which close it

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut while we connected upstream
                    client.close()
                    server.close()
                    return
                self._connections.update((client, server))
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, destination: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                destination.sendall(data)
        except OSError:
            pass
        # One side ended: end both, as a real connection would; each pump closes its source.
        with self._lock:
            self._connections.discard(source)
            self._connections.discard(destination)
        _shutdown(destination)
        _shutdown(source)
        source.close()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
