"""How to run TorchServe and talk to it: the one library the operator scripts, the gateway, the benchmarks and the
tests share.

    config      config.properties with TorchServe's TS_* overrides; where a server listens (Endpoints)
    tokens      TorchServe's key_file.json: the inference, management and API keys
    rest        one HTTP call (status, JSON); a REST prediction
    readiness   wait until every worker of every version of a model is READY
    ports       free loopback ports, and the clash of a port taken before a server bound it
    processes   pids: alive, resident memory, stop and wait
    archive     package a .mar (scripts/package.sh), read one
    launch      the one way to start and stop a TorchServe (scripts/serve.sh, the gateway, gpu_check, the
                benchmark and the tests all call it)
    management  the management API over REST and gRPC, worker counts, scaling
    rpc         the gRPC inference client, and the stubs generated from TorchServe's protos
    cli         the options every client's command line shares (server, token)

model/ and handler/ never import it: they travel inside the .mar, and a worker must run the archive's code only.
"""
