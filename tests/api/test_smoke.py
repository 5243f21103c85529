"""A first end-to-end slice: boto3 against a real gateway process."""


def test_put_get_list_delete(s3, bucket):
    body = b"\xff\xd8" + b"face" * 8000
    put = s3.put_object(Bucket=bucket, Key="cam1/0001.jpg", Body=body, ContentType="image/jpeg",
                        Metadata={"camera": "1"})
    got = s3.get_object(Bucket=bucket, Key="cam1/0001.jpg")
    assert got["Body"].read() == body
    assert got["ETag"] == put["ETag"]
    assert got["ContentType"] == "image/jpeg"
    assert got["Metadata"] == {"camera": "1"}
    listed = s3.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listed["Contents"]] == ["cam1/0001.jpg"]
    s3.delete_object(Bucket=bucket, Key="cam1/0001.jpg")
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
