// Injected into a COPY of the report by tests/test_report.py. Drives the report's own app the way a reader
// does (each category and subcategory in the menu, each result in the content pane) and writes what the
// page showed, as JSON, into a <pre> element with the id probe-result for `chromium --dump-dom` to return.
window.addEventListener("load", async () => {
  const out = {menus: {}, results: {}, error: null};
  const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  try {
    for (let i = 0; typeof app === "undefined" || !app; i++) {  // React mounts the app after load
      if (i > 200) throw new Error("the report's app never started");
      await pause(50);
    }
    for (const [category, subcategories] of Object.entries(categories)) {
      for (const [subcategory, paths] of Object.entries(subcategories)) {
        app.setView({navbarMode: "menu"});  // the results list is built when it mounts: leave it first
        await pause(20);
        app.setView({navbarMode: "subcategory", category: category, subcategory: subcategory});
        await pause(20);
        out.menus[`${category} / ${subcategory}`] = document.querySelector("nav").innerText;
        for (const path of paths) {
          const entry = results[path];
          if (entry.mime_type.startsWith("image/")) {
            app.setView({content: "img", contentPath: entry.data_uri, resultPath: path});
            await pause(20);
            const img = Array.from(document.images).find((i) => i.getAttribute("src") === entry.data_uri);
            for (let i = 0; img && !img.complete && i < 100; i++) await pause(50);
            out.results[path] = {kind: "image", shown: Boolean(img), complete: Boolean(img && img.complete),
                                 width: img ? img.naturalWidth : 0, height: img ? img.naturalHeight : 0};
          } else {
            app.setView({content: "html", contentPath: entry.data_uri, resultPath: path});
            await pause(20);
            const frame = Array.from(document.querySelectorAll("iframe")).find((f) => f.getAttribute("src") === entry.data_uri);
            const text = atob(entry.data_uri.split(",", 2)[1]);
            out.results[path] = {kind: entry.mime_type, shown: Boolean(frame), has_table: text.includes("<table")};
          }
        }
      }
    }
  } catch (e) {
    out.error = String(e);
  }
  const pre = document.createElement("pre");
  pre.id = "probe-result";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
