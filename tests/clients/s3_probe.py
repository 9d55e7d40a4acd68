"""Looks at and attacks an S3 bucket with boto3, independently of Custos's own client.

Usage: s3_probe.py ENDPOINT BUCKET COMMAND [ARGS]

  create-bucket             create BUCKET with Object Lock enabled
  versions PREFIX           JSON lines: key, version, size, latest, delete marker,
                            lock mode, retain-until (RFC 3339), legal hold
  delete KEY VERSION        delete one version (no bypass); prints "deleted" or
                            "refused CODE"
  delete-bypass KEY VERSION delete one version with x-amz-bypass-governance-retention
  delete-marker KEY         delete without a version (adds a delete marker)
  overwrite KEY             put other bytes as a new version of KEY
  shorten KEY VERSION       try to move the retain-until date to one minute from now
  copy-prefix SRC DST       copy the newest version of every object under SRC to the
                            same name under DST (a chain passed off as another's);
                            prints the number copied

Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
"""

import datetime
import json
import sys

import boto3
from botocore.exceptions import ClientError


def client(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def versions(s3, bucket, prefix):
    paginator = s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            try:
                head = s3.head_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
            except ClientError as e:
                # Deleted between the listing and this look (an old index copy the
                # serving node removes): not a version any more.
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NoSuchVersion"):
                    continue
                raise
            until = head.get("ObjectLockRetainUntilDate")
            print(json.dumps({
                "key": v["Key"],
                "version": v["VersionId"],
                "size": v["Size"],
                "latest": v["IsLatest"],
                "delete_marker": False,
                "mode": head.get("ObjectLockMode"),
                "until": until.astimezone(datetime.timezone.utc).isoformat() if until else None,
                "legal_hold": head.get("ObjectLockLegalHoldStatus") == "ON",
            }))
        for m in page.get("DeleteMarkers", []):
            print(json.dumps({
                "key": m["Key"],
                "version": m["VersionId"],
                "size": 0,
                "latest": m["IsLatest"],
                "delete_marker": True,
                "mode": None,
                "until": None,
                "legal_hold": False,
            }))


def attempt(fn):
    try:
        fn()
        print("deleted")
    except ClientError as e:
        print("refused " + e.response.get("Error", {}).get("Code", "?"))


def main():
    endpoint, bucket, command, *args = sys.argv[1:]
    s3 = client(endpoint)
    if command == "create-bucket":
        s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
        print("created")
    elif command == "versions":
        versions(s3, bucket, args[0])
    elif command == "delete":
        attempt(lambda: s3.delete_object(Bucket=bucket, Key=args[0], VersionId=args[1]))
    elif command == "delete-bypass":
        attempt(lambda: s3.delete_object(
            Bucket=bucket, Key=args[0], VersionId=args[1], BypassGovernanceRetention=True))
    elif command == "copy-prefix":
        src, dst = args
        copied = 0
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=src):
            for o in page.get("Contents", []):
                try:
                    s3.copy_object(Bucket=bucket, Key=dst + o["Key"][len(src):],
                                   CopySource={"Bucket": bucket, "Key": o["Key"]})
                except ClientError as e:
                    # Gone since the listing (an old index copy the node removed).
                    if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                        continue
                    raise
                copied += 1
        print(copied)
    elif command == "delete-marker":
        attempt(lambda: s3.delete_object(Bucket=bucket, Key=args[0]))
    elif command == "overwrite":
        s3.put_object(Bucket=bucket, Key=args[0], Body=b"not what custos wrote")
        print("overwritten")
    elif command == "shorten":
        until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=1)
        attempt(lambda: s3.put_object_retention(
            Bucket=bucket, Key=args[0], VersionId=args[1],
            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until}))
    else:
        sys.exit("unknown command " + command)


if __name__ == "__main__":
    main()
