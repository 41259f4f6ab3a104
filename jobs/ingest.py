"""Ingest documents into a LanceDB table for retrieval: a Ray Job over Ray Data.

    python jobs/ingest.py --config configs/rag/welip_docs.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/ingest.py --config configs/rag/welip_docs.yaml

Steps, top to bottom (welip.rag.ingest): list the documents (local folder or s3:// prefix),
read the content hashes the table already holds, read and chunk every document (Ray Data
``flat_map``), embed the chunks the table lacks on actors holding the embedding model
(``map_batches``), add them, delete the chunks no document produces any more (a document
changed or removed), rebuild the full-text index, and print a summary. A second run adds
nothing.

Exit codes: 0 done, 1 no documents or a table of another embedding model, 2 an invalid config.
"""

from welip.job import run_job
from welip.rag import IngestConfig, ingest

if __name__ == "__main__":
    # ingest() prints its one-line report; the summary dict is for callers of the library.
    run_job(
        ingest,
        IngestConfig,
        component="ingest",
        doc=__doc__,
        errors=(FileNotFoundError, ValueError),
        print_summary=False,
    )
