"""The admin service (tgw.admin.v1) and ``triton-gateway ctl``, its command line."""
