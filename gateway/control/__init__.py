"""The control plane's side of the control protocol (``protos/tgw/control/v1``): it runs
tgw-edge, the data plane, feeds it snapshots and reads back what it observes."""
