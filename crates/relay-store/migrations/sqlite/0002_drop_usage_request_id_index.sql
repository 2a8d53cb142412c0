-- Nothing looks usage rows up by request id, and every usage row paid for keeping this index.
DROP INDEX relay_usage_request_id;
