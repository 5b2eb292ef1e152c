"""A Flight client with no relgraph code: pyarrow.flight against `relgraph serve`.

Run by ./dev.sh test (which installs pyarrow into a virtual environment):
    python tests/flight_client.py RELGRAPH_BINARY

Generates a small retail world, trains a churn and a recommendation model, starts
`relgraph serve` on 127.0.0.1 port 0 with a token, then authenticates, lists flights,
scores, recommends, appends orders and reads them back through the next scores.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight

SMALL = "channels = 32\nencoder_blocks = 1\nfanouts = [32, 16]\nepochs = 2\nmax_steps_per_epoch = 20\n"
CHURN = ("PREDICT COUNT(ORDERS.*, 0, 30, days) = 0 FOR EACH CUSTOMERS.CUSTOMER_ID "
         "WHERE COUNT(ORDERS.*, -90, 0, days) > 0")
RECS = "PREDICT LIST_DISTINCT(ORDERS.PRODUCT_ID, 0, 14, days) RANK TOP 5 FOR EACH CUSTOMERS.CUSTOMER_ID"
TOKEN = "py-s3cret"


def run(binary, *args):
    subprocess.run([binary, *args], check=True, stdout=subprocess.DEVNULL)


TLS = Path(__file__).parent / "fixtures" / "tls"


def start(binary, root, env=None, store="store"):
    server = subprocess.Popen(
        [binary, "serve", "--data", str(root / "data"), "--store", str(root / store),
         "--model", f"churn={root / 'churn'}", "--model", f"recs={root / 'recs'}",
         "--listen", "127.0.0.1:0", "--token", TOKEN],
        stdout=subprocess.PIPE, text=True, env=env)
    for line in server.stdout:
        if line.startswith("serving on "):
            return server, line.split()[-1]
    raise RuntimeError("the server stopped before it listened")


def expect_error(kind, call):
    try:
        call()
    except kind as e:
        return str(e)
    raise AssertionError(f"expected {kind.__name__}")


def main(binary):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run(binary, "generate", "retail", "--out", str(root / "data"), "--customers", "1000",
            "--products", "150", "--days", "400")
        (root / "small.toml").write_text(SMALL)
        for name, query in (("churn", CHURN), ("recs", RECS)):
            run(binary, "train", query, "--data", str(root / "data"), "--out", str(root / name),
                "--config", str(root / "small.toml"))
        server, addr = start(binary, root)
        try:
            check(flight.connect(f"grpc://{addr}"))
        finally:
            server.kill()
            server.wait()
        # The same server over TLS: a client trusting the test CA scores, a plain one
        # gets nowhere.
        env = dict(os.environ, RELGRAPH_TLS_CERT=str(TLS / "node.pem"),
                   RELGRAPH_TLS_KEY=str(TLS / "node.key"))
        server, addr = start(binary, root, env, store="store-tls")
        try:
            ca = (TLS / "ca.pem").read_bytes()
            client = flight.connect(f"grpc+tls://{addr}", tls_root_certs=ca)
            options = flight.FlightCallOptions(
                headers=[client.authenticate_basic_token(b"relgraph", TOKEN.encode())])
            ticket = flight.Ticket(json.dumps({"v": 1, "model": "churn", "keys": ["CU-1003"]}))
            assert client.do_get(ticket, options).read_all().num_rows == 1
            plain = flight.connect(f"grpc://{addr}")
            expect_error(flight.FlightError,
                         lambda: plain.authenticate_basic_token(b"relgraph", TOKEN.encode()))
        finally:
            server.kill()
            server.wait()
    print("pyarrow.flight client: ok")


def check(client):
    expect_error(flight.FlightUnauthenticatedError, lambda: list(client.list_flights()))
    expect_error(flight.FlightUnauthenticatedError,
                 lambda: client.authenticate_basic_token(b"relgraph", b"wrong"))
    options = flight.FlightCallOptions(headers=[client.authenticate_basic_token(b"relgraph", TOKEN.encode())])

    infos = list(client.list_flights(options=options))
    models = [json.loads(i.descriptor.command) for i in infos
              if i.descriptor.descriptor_type == flight.DescriptorType.CMD]
    assert sorted(m["model"] for m in models) == ["churn", "recs"], models
    tables = [i.descriptor.path for i in infos if i.descriptor.descriptor_type == flight.DescriptorType.PATH]
    assert [b"tables", b"orders"] in tables, tables
    orders_info = client.get_flight_info(flight.FlightDescriptor.for_path("tables", "orders"), options)
    rows_before = orders_info.total_records

    def get(ticket):
        return client.do_get(flight.Ticket(json.dumps(ticket)), options).read_all()

    scores = get({"v": 1, "model": "churn", "keys": ["CU-1003", "CU-1001"]})
    assert scores.column_names == ["customer_id", "anchor_time", "prob"], scores.schema
    assert scores.column("customer_id").to_pylist() == ["CU-1003", "CU-1001"]
    assert all(0.0 <= p <= 1.0 for p in scores.column("prob").to_pylist())
    anchor = scores.column("anchor_time")[0].as_py()

    recs = get({"v": 1, "op": "recommend", "model": "recs", "keys": ["CU-1003"], "k": 5})
    assert recs.column("rank").to_pylist() == [1, 2, 3, 4, 5]
    s = recs.column("score").to_pylist()
    assert s == sorted(s, reverse=True), s

    expect_error(pa.ArrowKeyError,
                 lambda: get({"v": 1, "model": "churn", "keys": ["CU-nobody"]}))

    # Append orders for one customer, a minute before the anchor, and read them back
    # through the next scores: the customer's churn probability moves, no one else's.
    other = get({"v": 1, "model": "churn", "keys": ["CU-1001"]}).column("prob")[0].as_py()
    before = scores.column("prob")[0].as_py()
    stamp = pa.scalar(anchor, pa.timestamp("s")).cast(pa.int64()).as_py() - 60
    n = 12
    orders = pa.table({
        "order_id": [f"O-py-{i}" for i in range(n)],
        "customer_id": ["CU-1003"] * n,
        "product_id": ["P-5001"] * n,
        "quantity": pa.array([1] * n, pa.int64()),
        "price": [19.99] * n,
        "timestamp": pa.array([stamp] * n, pa.timestamp("s")),
    })
    # The command form names the put, so that a retry (here, on purpose) adds nothing.
    named = flight.FlightDescriptor.for_command(
        json.dumps({"v": 1, "op": "append", "table": "orders", "id": "py-orders-1"}))

    def append():
        writer, reader = client.do_put(named, orders.schema, options)
        writer.write_table(orders)
        writer.done_writing()
        ack = json.loads(reader.read().to_pybytes())
        writer.close()
        return ack

    ack = append()
    assert ack["rows"] == n and ack["total"] == rows_before + n, ack
    assert "duplicate" not in ack, ack
    retried = append()
    assert retried["duplicate"] and retried["seq"] == ack["seq"], retried
    assert retried["total"] == rows_before + n, retried
    after = get({"v": 1, "model": "churn", "keys": ["CU-1003"]}).column("prob")[0].as_py()
    assert after != before, (before, after)
    assert get({"v": 1, "model": "churn", "keys": ["CU-1001"]}).column("prob")[0].as_py() == other
    info = client.get_flight_info(flight.FlightDescriptor.for_path("tables", "orders"), options)
    assert info.total_records == rows_before + n

    # Explanations as two more columns; the appended orders are rows like any other.
    explained = get({"v": 1, "model": "churn", "keys": ["CU-1003"], "explain": True})
    assert explained.column_names[-2:] == ["top_columns", "top_rows"], explained.schema
    assert explained.column("prob")[0].as_py() == after
    assert "%" in explained.column("top_columns")[0].as_py()

    # A wrong schema is refused whole, with the column named.
    bad = pa.table({"order_id": ["O-bad"], "colour": ["red"]})
    message = expect_error(pa.ArrowInvalid, lambda: put(client, options, bad))
    assert "colour" in message, message

    # Streaming scores: each request answered in order.
    writer, reader = client.do_exchange(
        flight.FlightDescriptor.for_command(json.dumps({"v": 1, "model": "churn"})), options)
    writer.begin(pa.schema([("key", pa.string())]))
    for keys in (["CU-1001"], ["CU-1002", "CU-1003"]):
        writer.write_batch(pa.record_batch([pa.array(keys)], names=["key"]))
        assert reader.read_chunk().data.column(0).to_pylist() == keys
    writer.done_writing()
    writer.close()


def put(client, options, table):
    writer, reader = client.do_put(flight.FlightDescriptor.for_path("tables", "orders"), table.schema, options)
    writer.write_table(table)
    writer.done_writing()
    reader.read()
    writer.close()


if __name__ == "__main__":
    main(sys.argv[1])
