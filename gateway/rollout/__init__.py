"""Progressive delivery: a candidate version judged against its baseline step by step."""
