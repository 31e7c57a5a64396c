// Starts Swagger UI on /api/docs. A file of its own (not an inline script) so the page's
// Content-Security-Policy can say script-src 'self' and nothing more.
(function () {
  "use strict";
  function start() {
    var root = document.getElementById("swagger-ui");
    window.ui = SwaggerUIBundle({
      url: root.getAttribute("data-spec-url"),
      domNode: root,
      deepLinking: true,
      layout: "BaseLayout",
      presets: [SwaggerUIBundle.presets.apis],
      // No badge fetched from the public validator: the page talks to this server only.
      validatorUrl: null,
      // "Try it out" fetches are same-origin, so they carry (and receive) the HTTP-only `token` cookie
      // that register and login set; "Authorize" adds the Bearer header instead.
      displayRequestDuration: true
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
