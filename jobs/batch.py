"""Run one /v1/batches batch: a Ray Job over Ray Data (the gateway submits it per batch).

    python -m welip.batches --settings '{"batch_id": "batch_...", "gateway_url": "http://127.0.0.1:8000"}'
    python jobs/batch.py --settings '{...}'   # the same, from a checkout

Steps (welip.batches.run_batch): move the batch to in_progress, read its input file,
send every line through the gateway (key in $WELIP_BATCH_JOB_KEY, the creator's caller
token in $WELIP_BATCH_CALLER_TOKEN), write request_counts as answers come and stop on a
cancel or expiry, then store the output and error files and set the end status.
The database and storage come from WELIP_DATABASE_URL and WELIP_STORAGE_URL.
"""

from welip.batches import main

if __name__ == "__main__":
    main()
