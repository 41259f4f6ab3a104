"""``python -m welip.batches --settings JSON``: the job the gateway submits per batch."""

from welip.batches import main

if __name__ == "__main__":
    main()
