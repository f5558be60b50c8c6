from conftest import add_post


def test_permalink_page_renders(engine, client):
    post = add_post(engine)
    response = client.get(f"/read/{post.id}/{post.slug}")
    assert response.status_code == 200
    assert "Breadth Is Thinning" in response.text
