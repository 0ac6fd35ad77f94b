"""``manage.py bench_gateway``: the gateway's throughput, latency and connection cost against
baselines in the same run (docs/performance.md).

Modules (each process of a run is its own OS process, so the load generator never shares the
measured server's process):

- ``runner``: the run: bench objects, then each target started, its scenarios run, stopped;
- ``scenarios``: fanout, channels, idle and storm, and the run's parameters;
- ``objects``: the bench API and credentials (portal services), deleted after the run;
- ``drivers``: the runner's handles on the load-generator and publisher processes;
- ``targets``: the ``Target`` protocol, the gateway (uvicorn or daphne) and bare bridge targets,
  process start/stop and CPU/RSS sampling;
- ``bare_bridge``: baseline (a), a minimal aio-pika → ``websockets.broadcast()`` server;
- ``pushpin``: baseline (b), Pushpin (owned by another helper; imported lazily);
- ``wsclient``: the load generator, thousands of WebSocket connections per process;
- ``publisher``: publishes events at a paced rate into RabbitMQ (or Pushpin's publish API);
- ``report``: plain-text tables, ratios and the JSON document.

``wsclient`` and ``publisher`` import no Django and start in a fraction of a second.
"""
