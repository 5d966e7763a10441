"""Drives the served page (realm_jax/serve/page.html) in headless Chromium
through selenium: types a question, waits for the answer, and reads back
what a user sees. test_serve.py's browser test uses it; run as a script it
serves a workdir and saves a screenshot of the page answering a question
(the README's docs/serve_page.png):

  python tests/page_browser.py <workdir> "<question>" docs/serve_page.png

The browser is Debian's `chromium` with its `chromium-driver` (.ci/run
installs both); selenium is told their paths, so nothing is downloaded.
"""
import contextlib
import shutil
import sys

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def missing() -> str | None:
  """Why no browser test can run here, or None."""
  try:
    import selenium  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return "selenium is not installed (the [test] extra)"
  if not any(map(shutil.which, BROWSERS)):
    return (f"no Chromium on PATH (tried {', '.join(BROWSERS)}; Debian: "
            f"apt-get install chromium chromium-driver)")
  if not any(map(shutil.which, DRIVERS)):
    return "no chromedriver on PATH (Debian: apt-get install chromium-driver)"
  return None


@contextlib.contextmanager
def browser(width=1000, height=900):
  from selenium import webdriver  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.chrome import service  # pylint: disable=g-import-not-at-top
  options = webdriver.ChromeOptions()
  options.binary_location = next(filter(None, map(shutil.which, BROWSERS)))
  for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
               "--disable-gpu", f"--window-size={width},{height}"):
    options.add_argument(flag)
  driver = webdriver.Chrome(options=options, service=service.Service(
      next(filter(None, map(shutil.which, DRIVERS)))))
  try:
    yield driver
  finally:
    driver.quit()


def ask_on_page(driver, url: str, question: str, png: str | None = None,
                timeout: float = 120) -> dict:
  """Asks on the page at `url`; what it shows: the answer, the meta line,
  the version line, and per evidence item its title, p(z|x) bar width (%),
  and highlighted text (None where it has no highlight)."""
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  driver.get(url)
  box = driver.find_element(By.ID, "question")
  box.clear()
  box.send_keys(question)
  driver.find_element(By.CSS_SELECTOR, "#ask button").click()
  # The page writes "…" while it waits, then the answer and the evidence.
  WebDriverWait(driver, timeout).until(
      lambda d: d.find_element(By.ID, "answer").text not in ("", "…")
      and (d.find_elements(By.CSS_SELECTOR, "#evidence li")
           or d.find_elements(By.CSS_SELECTOR, "#answer .error")))
  evidence = []
  for item in driver.find_elements(By.CSS_SELECTOR, "#evidence li"):
    marks = item.find_elements(By.TAG_NAME, "mark")
    fill = item.find_element(By.CSS_SELECTOR, ".bar > div")
    evidence.append({
        "title": item.find_element(By.CLASS_NAME, "title").text,
        "bar": float(fill.get_attribute("style").split("width:")[1]
                     .split("%")[0]),
        "highlight": marks[0].text if marks else None})
  shown = {"answer": driver.find_element(By.ID, "answer").text,
           "meta": driver.find_element(By.ID, "meta").text,
           "version": driver.find_element(By.ID, "version").text,
           "evidence": evidence}
  if png:
    driver.save_screenshot(png)
  return shown


def main(workdir, question, png):
  import test_serve  # pylint: disable=g-import-not-at-top
  server = test_serve.Server(workdir)
  try:
    with browser() as driver:
      shown = ask_on_page(driver, server.url + "/", question, png)
  finally:
    server.stop()
  print(shown)


if __name__ == "__main__":
  main(*sys.argv[1:])
